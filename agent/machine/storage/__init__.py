"""What a machine keeps on disk for apps: data folders, and the janitor that frees space."""
