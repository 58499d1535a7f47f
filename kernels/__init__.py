"""Standard kernel flavors fetched from Debian's archive.

`fetch_standard` (kernels.standard) resolves a flavor such as cloud-amd64 on
the host's Debian mirror (kernels.aptsources), downloads and verifies the
image package (kernels.archive) and unpacks it as a KernelTree
(kernels.tree): vmlinuz plus lib/modules/<version> with depmod's indexes.
"""
