"""The ``bmc`` command line: the parser (:mod:`bmc.cli.main`) and one function per subcommand (:mod:`bmc.cli.commands`)."""
