{
  "targets": [
    {
      "target_name": "zn_cpu",
      "sources": [
        "<!@(node native/sources.cjs core)",
        "<!@(node native/sources.cjs addon)"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-frtti", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17"
      }
    }
  ],
  "comment": "zn_mpi, the optional MPI addon, is built only where an MPI compiler wrapper answers (native/mpi-config.cjs). It sits beside zn_cpu.node in build/Release, where node-gyp-build and prebuildify would take whichever .node file the directory lists first: lib/native.ts loads build/Release/zn_cpu.node by name, and npm run prebuild builds without MPI.",
  "conditions": [
    ["'<!(node native/mpi-config.cjs found)'=='true'", {
      "targets": [
        {
          "target_name": "zn_mpi",
          "sources": ["<!@(node native/sources.cjs mpi_addon)"],
          "include_dirs": [
            "<!(node -p \"require('node-addon-api').include_dir\")",
            "native"
          ],
          "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "OMPI_SKIP_MPICXX", "MPICH_SKIP_MPICXX"],
          "cflags!": ["-fno-exceptions"],
          "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
          "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-frtti", "-Wall", "-Wextra", "-Wno-unused-parameter", "<!@(node native/mpi-config.cjs cflags)"],
          "libraries": ["<!@(node native/mpi-config.cjs libs)"],
          "ldflags": ["-pthread", "-ldl"]
        }
      ]
    }]
  ]
}
