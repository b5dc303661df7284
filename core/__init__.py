"""The foundation that the service, training and the benchmarks share: the model (``model``), audio
decoding and Whisper's log-mel (``audio``, ``audio_containers``), bit widths and codebooks
(``codebook``), the checkpoint format (``checkpoint``), safetensors files written atomically
(``tensor_files``), compute counting (``compute``) and the package version (``version``).

Nothing here imports the web service or training.
"""
