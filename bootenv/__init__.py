"""Boot environment builder: kernel + initramfs carrying the frozen agent."""
