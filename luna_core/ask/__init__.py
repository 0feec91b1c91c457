"""Asking the vault: the one box type, the mix modes, the query layer (k-NN and projector
answers), browsing the catalog and its thumbnails."""
