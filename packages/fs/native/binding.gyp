{
  "targets": [
    {
      "target_name": "strata_fs",
      "sources": ["strata_fs.c"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
