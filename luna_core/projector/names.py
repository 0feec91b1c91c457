"""How projectors are named in the registry: light constants the CLI and the settings use without
torch."""

REGISTERED_NAME = "luna-projector"
CHAMPION = "champion"
DEFAULT_PROJECTOR = f"models:/{REGISTERED_NAME}@{CHAMPION}"
