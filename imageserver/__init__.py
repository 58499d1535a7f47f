"""The image server: image store, capture, serving, cluster config, monitor."""
