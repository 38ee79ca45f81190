"""Who said what: speaker embeddings, voices and names, offline.

- ``torchzip``: the CAM++ weights read from their torch zip file without torch, refusing
  every pickled class but a state dict's tensors.
- ``onnxproto`` and ``campplus``: the network. Filter banks in numpy; the rest an ONNX graph
  written from the state dict and run by onnxruntime (a worker loads it once).
- ``diarize``: windows of speech embedded (in a worker), clustered into voices and each word
  and segment labelled (in a worker, or in the daemon when it joins a long file's units:
  numpy only).
- ``voices``: the library of known voices (names, checked; the file beside the journal) and
  enrolment from clips.
- ``labeller``: ``SpeakerLabels``, what the transcription engine holds and calls (is a file to
  be labelled, its windows, its labels): the engine knows nothing of speakers but that.

The weights themselves are fetched and hash-checked by ``engine.model_store``. Imports point
one way: this package may read ``values``, ``engine.audio`` (clips to enrol) and
``engine.model_store`` (the weights), and nothing of the daemon; the daemon reads ``diarize``
(labels at a join, names) and ``voices`` (the library).
"""
