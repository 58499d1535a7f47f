"""Whether a boot environment's kernel can boot through the Secure Boot path.

Under Secure Boot the firmware checks shim (signed by Microsoft's UEFI CA),
shim checks GRUB, and GRUB asks shim to check the kernel (Debian's key).  A
kernel without an Authenticode signature is refused there, so a medium
carrying one boots only with Secure Boot off.  Debian's kernels are signed
(every flavor, so also a UYOK kernel taken from a Debian image or host); a
self-built one, or a UYOK kernel of a distribution that does not sign, is
not.  `media iso|usb|pxe` warn about it.

This looks for the signature, it does not verify it: a PE/COFF image whose
certificate table (data directory 4) is not empty.  Nothing is run.
"""

from __future__ import annotations

import struct
from pathlib import Path

_PE32 = 0x10B
_PE32_PLUS = 0x20B
_CERTIFICATE_TABLE = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
_HEADER_BYTES = 64 * 1024  # the PE headers of any kernel are well within this


def authenticode_signed(pe: bytes) -> bool:
    """Whether `pe` (the start of a file) is a PE/COFF image carrying an
    Authenticode certificate table; False for anything else (a bzImage
    without an EFI stub, a truncated or non-PE file)."""
    try:
        if pe[:2] != b"MZ":
            return False
        off = struct.unpack_from("<I", pe, 0x3C)[0]
        if pe[off:off + 4] != b"PE\0\0":
            return False
        opt = off + 24  # after the signature and the COFF file header
        magic = struct.unpack_from("<H", pe, opt)[0]
        if magic == _PE32_PLUS:
            count_at, dirs = opt + 108, opt + 112
        elif magic == _PE32:
            count_at, dirs = opt + 92, opt + 96
        else:
            return False
        if struct.unpack_from("<I", pe, count_at)[0] <= _CERTIFICATE_TABLE:
            return False
        address, size = struct.unpack_from("<II", pe, dirs + 8 * _CERTIFICATE_TABLE)
    except struct.error:  # truncated
        return False
    return address > 0 and size > 0


def kernel_signed(kernel: Path) -> bool:
    with kernel.open("rb") as f:
        return authenticode_signed(f.read(_HEADER_BYTES))


def unsigned_warning(kernel: Path) -> str | None:
    """The one-line warning for a medium whose UEFI path is shim + GRUB, or
    None when the kernel is signed."""
    if kernel_signed(kernel):
        return None
    return (f"warning: the kernel {kernel} has no Authenticode signature: this medium will "
            "not boot with Secure Boot on (build the boot environment with a signed kernel, "
            "such as Debian's, or turn Secure Boot off)")
