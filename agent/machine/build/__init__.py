"""Artifact -> unpacked release -> virtualenv, with nothing trusted from the artifact."""
