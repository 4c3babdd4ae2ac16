"""``bmc adapt``: a model for one laboratory from its labelled or reviewed cells."""
