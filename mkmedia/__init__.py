"""Boot media for the boot environment: PXE trees, ISO images, USB disks."""
