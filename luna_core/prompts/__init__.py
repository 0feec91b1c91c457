"""Prompts as their generators read them: weighted pieces, chunk breaks and the tags that are never
encoded (LoRA, LyCORIS, hypernetwork, embedding names, wildcard leftovers), one parser per writer's
syntax (`syntax.py` dispatches); the encoding of a parsed prompt as its writer encodes it is
`encode.py`."""
