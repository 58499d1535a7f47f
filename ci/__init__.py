"""The QEMU harness and CI helpers."""
