{
  "targets": [
    {
      "target_name": "strata_fs",
      "sources": ["strata_fs.c", "strata_aead.c", "strata_watch.c"],
      "libraries": ["-ldl", "-lpthread"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
