"""The VQ tokenizer.

- `vq`: the model (`VQTokenizer`), its config, and saving/loading it (`save_tokenizer`, `load_tokenizer`,
  `load_codebook`);
- `train`: training, pruning the codebook to the codes in use, reconstruction PSNR, codebook statistics and
  the reconstruction grid;
- `encode`: encoding the shards' images to code ids (the `tokenize` stage; the files are `data.tokens`);
- `synonyms`: each code's nearest other codes in the codebook, for token augmentation.
- `adapt`, `adapt_train`: TokenAdapt (SeiT++), the frozen pair f, g that lets spatial augmentations act on token
  grids, its paired pixel/map transforms and its training (the `tokenadapt` stage).
"""
