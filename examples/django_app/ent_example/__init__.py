"""A small ENT that embeds account_merge: the parent's « Mon compte » pages."""
