"""The recorder's archive: the durable spool (journals, atomic instance files, delivery
state) and the header-only index of finished instances."""
