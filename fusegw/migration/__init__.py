"""Moving a flat version-2 volume to layout version 3 (quota scopes)."""
