"""The I/O boundary: every file format lives here, nothing else reads or writes models.

models.py        load_model / save_model by extension (.nir, .onnx)
nir_io.py        NIR (HDF5) through the `nir` package
onnx_*.py        the project's ONNX SNN convention (docs/onnx_convention.md)
atomic.py        atomic writes that honour the umask
paths.py         output paths checked before any work (check_output), used by every command that writes
"""
