"""The VQ tokenizer: the model (`vq`), training, pruning and encoding, and the codebook's synonyms.
"""
