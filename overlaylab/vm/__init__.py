"""The qemu layer: the lab initramfs (``initramfs``) and qemu argv builders plus runner (``qemu``)."""
