"""Task families: what a target is, the loss, the prediction and the memory's extra columns.
"""
