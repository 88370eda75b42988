"""The machine agent: installs, runs, checks and routes the instances placed on its host."""
