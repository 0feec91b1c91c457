"""The Luna code location: the Definitions assembly and the resources every domain uses."""
