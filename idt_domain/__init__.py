"""Pure domain helpers shared by services: no I/O, no clock, no framework imports."""
