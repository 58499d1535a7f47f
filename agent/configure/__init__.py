"""Configuring the installed system: the work System Configurator did.

Each concern (network config, initrd tool, bootloader) is handled by
"footprints": small classes that recognize a style by the files present in
the image (not by the distribution's name) and say how well they fit.
"""
