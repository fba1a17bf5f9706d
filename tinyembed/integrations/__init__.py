"""Plug-ins for distributed engines that users already run (Ray Data today). The layer sits on
top: it may use the engine and the jobs' file formats; nothing below imports it."""
