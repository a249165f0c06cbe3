"""The data path below the dataset plug-ins: the augmentation recipe (recipe.py, torch-free) and its
batched application (augment.py), the in-memory split (splits.py), image decoding (images.py), data
errors (errors.py) and the loaders that serve splits and image folders (streaming.py).

Nothing is imported here, so that reading a recipe (cecl/config.py, cecl/datasets) does not load torch.
"""
