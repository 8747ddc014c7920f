"""The CRI as startprof sees it: the API schema (``proto/``), the vocabulary of its methods, and
the decoding of CRI calls from the bytes on containerd's socket."""
