"""Query/Retrieve: PS3.4 C.2.2.2 matching of identifiers and the Patient -> Study -> Series ->
Image information model the bridge answers from."""
