"""recbole-genair: GenAIR (Generative Archetype-grounded Item Representations) for RecBole."""
__version__ = "0.1.0"
