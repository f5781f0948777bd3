"""CULNIG attribution scores (paper Sec. 3.1-3.2). Not implemented yet: see the attribution issue."""
