"""Ingress: follow chains, decode blocks, publish ExtendedBlocks."""
