"""The ``switchboard`` command line: the top layer, on the library, the local stack and the generated stubs."""
