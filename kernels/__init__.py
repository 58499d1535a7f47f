"""Kernels for boot environments.

A kernel tree (kernels.tree) is made (kernels.assemble) from any system
tree holding a kernel: Debian's packages fetched through apt with a private
configuration (kernels.apt, kernels.standard; the mirror from the host's
apt: kernels.aptsources), an image in the store or the running host
(kernels.fromtree).  kernels.moduledb reads its module indexes: modalias
lookup, dependencies, soft dependencies, built-in modules, firmware.
"""
