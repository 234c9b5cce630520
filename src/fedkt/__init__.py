"""fedkt: federated knowledge transfer between a server LLM and client SLMs.

Layers, imported in one direction only:
``data``, ``models``, ``privacy``, ``evaluation``, ``training`` are libraries;
``algorithms`` compose them into one protocol each; ``federation`` adapts protocols to
Flower messages; ``config`` and ``cli`` sit on top.
"""

__version__ = "0.1.0"
