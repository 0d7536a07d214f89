"""Data: raw readers (NTU `.skeleton`, PKU-MMD, npz/pyskl), reference denoising, benchmark
splits, the packed store, transforms and the torch Dataset. Raw files become a store once
(`preprocess.preprocess`); everything downstream reads only the store (`store.Store`)."""
