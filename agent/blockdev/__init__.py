"""Building what the plan puts on top of the partitions: md arrays, LUKS
volumes, LVM groups and volumes (`assemble`), one small module per tool."""
