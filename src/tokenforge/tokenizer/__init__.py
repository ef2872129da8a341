"""The VQ tokenizer.

- `vq`: the model (`VQTokenizer`), its config, and saving/loading it (`save_tokenizer`, `load_tokenizer`,
  `load_codebook`);
- `pretrained`: a local diffusers `VQModel` folder as the tokenizer (`tokenizer.pretrained`), pruned and saved in
  the same folder layout, so `load_tokenizer` serves both; `codes`: the id limits and kept-code checks they share;
- `train`: training on a bounded sample streamed from the shards, pruning the codebook to the codes in use, reconstruction PSNR, codebook statistics and
  the reconstruction grid;
- `encode`: encoding the shards' images to code ids as they stream (the `tokenize` stage; the files are
  `data.tokens`);
- `synonyms`: each code's nearest other codes in the codebook, for token augmentation.
- `adapt`, `adapt_train`: TokenAdapt (SeiT++), the frozen pair f, g that lets spatial augmentations act on token
  grids, its paired pixel/map transforms and its training (the `tokenadapt` stage).
"""
