# The CUDA backend (-DZN_CUDA=ON): a static library of the .cu kernels (zn_cuda_core), the device
# check executable (zn_cuda_check: every CUDA kernel against the CPU kernel, then timings), and
# zn_cuda.node, written to <build>/cuda/ so that node-gyp-build, which loads the first .node in
# build/Release, can never pick it up on a machine without CUDA.
# cuBLASLt is found in the CUDA toolkit or in NVIDIA's pip wheels (ZN_CUBLAS_ROOT=<.../nvidia/cu13>);
# without it the tensor-core fallback GEMM is built and the configure step says so.
# NCCL (data parallel on GPUs) is loaded at run time (dlopen), so only nccl.h is needed here: from
# the toolkit or NVIDIA's nvidia-nccl-cu13 wheel (ZN_NCCL_ROOT=<.../nvidia/nccl>), whose
# lib/libnccl.so.2 is also where the addon looks when the system's search does not find one.
# Without nccl.h the addon builds and says so when asked for a communicator.
# Targets: sm_80 and sm_90a machine code by default; CMAKE_CUDA_ARCHITECTURES (e.g. 90a-real)
# narrows it. The "a" suffix needs CMake >= 3.25 (it is passed as compute_90a / sm_90a).
if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80-real 90a-real)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
message(STATUS "zephyr-native: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

set(ZN_CUBLAS_ROOT "$ENV{ZN_CUBLAS_ROOT}" CACHE PATH "Folder with include/cublasLt.h and lib/libcublasLt.so*")
find_path(ZN_CUBLASLT_INCLUDE cublasLt.h HINTS ${ZN_CUBLAS_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
find_library(ZN_CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12
             HINTS ${ZN_CUBLAS_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR})
if(ZN_CUBLASLT_INCLUDE AND ZN_CUBLASLT_LIBRARY)
  message(STATUS "zephyr-native: cuBLASLt found: ${ZN_CUBLASLT_LIBRARY}")
  set(ZN_HAVE_CUBLASLT ON)
else()
  message(STATUS "zephyr-native: cuBLASLt NOT found; building the mma.sync fallback GEMM only")
  set(ZN_HAVE_CUBLASLT OFF)
endif()

set(ZN_NCCL_ROOT "$ENV{ZN_NCCL_ROOT}" CACHE PATH "Folder with include/nccl.h and lib/libnccl.so.2")
find_path(ZN_NCCL_INCLUDE nccl.h HINTS ${ZN_NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
if(ZN_NCCL_INCLUDE)
  message(STATUS "zephyr-native: nccl.h found: ${ZN_NCCL_INCLUDE} (libnccl.so.2 is loaded at run time)")
else()
  message(STATUS "zephyr-native: nccl.h NOT found; building without data parallel on GPUs")
endif()

zn_sources(cuda_check ZN_CUDA_CHECK_SOURCES)
if(NOT ZN_CUDA_SOURCES)
  message(STATUS "zephyr-native: no CUDA sources listed in native/sources.json yet")
  return()
endif()

add_library(zn_cuda_core STATIC ${ZN_CUDA_SOURCES})
target_include_directories(zn_cuda_core PUBLIC ${CMAKE_SOURCE_DIR}/native)
# -Xptxas=-v prints each kernel's registers, stack frame and spills: scripts/build-cuda.sh
# surfaces the spill lines. The host side gets the same warnings as the C++ code.
string(REPLACE ";" "," ZN_CUDA_HOST_WARNINGS "${ZN_WARNINGS}")
target_compile_options(zn_cuda_core PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xptxas=-v -lineinfo -Xcompiler=${ZN_CUDA_HOST_WARNINGS}>)
# The kernels use only header-only parts of native/core; the GPU model (model/mistral_cuda.cu)
# also needs zn_core (shared checks, safetensors), which its users link after zn_cuda_core: the
# addon and the device check with CPU kernels. Without them (ZN_CUDA_CHECK_CPU=OFF, the device
# script's fallback) the model object is simply not pulled from the static library.
target_link_libraries(zn_cuda_core PUBLIC CUDA::cudart_static)
if(ZN_HAVE_CUBLASLT)
  target_include_directories(zn_cuda_core PUBLIC ${ZN_CUBLASLT_INCLUDE})
  target_link_libraries(zn_cuda_core PUBLIC ${ZN_CUBLASLT_LIBRARY})
  target_compile_definitions(zn_cuda_core PUBLIC ZN_HAVE_CUBLASLT=1)
endif()
if(ZN_NCCL_INCLUDE)
  set_source_files_properties(${CMAKE_SOURCE_DIR}/native/parallel/nccl_collectives.cpp PROPERTIES
                              INCLUDE_DIRECTORIES ${ZN_NCCL_INCLUDE} COMPILE_DEFINITIONS ZN_HAVE_NCCL=1)
  get_filename_component(ZN_NCCL_WHEEL_LIBRARY ${ZN_NCCL_INCLUDE}/../lib/libnccl.so.2 ABSOLUTE)
  if(EXISTS ${ZN_NCCL_WHEEL_LIBRARY})
    set_property(SOURCE ${CMAKE_SOURCE_DIR}/native/parallel/nccl_collectives.cpp APPEND PROPERTY
                 COMPILE_DEFINITIONS ZN_NCCL_WHEEL_LIBRARY="${ZN_NCCL_WHEEL_LIBRARY}")
  endif()
  target_link_libraries(zn_cuda_core PUBLIC ${CMAKE_DL_LIBS})
endif()

# The device check compares each CUDA kernel with the CPU kernel of its family when that CPU
# kernel is part of zn_core (ZN_HAVE_CPU_<FAMILY>), and always with its own float64 reference.
# -DZN_CUDA_CHECK_CPU=OFF builds it without zn_core (only float64 references): the device script's
# fallback when the CPU sources do not build.
option(ZN_CUDA_CHECK_CPU "Compare CUDA kernels with the CPU kernels in zn_cuda_check" ON)
if(ZN_CUDA_CHECK_SOURCES)
  add_executable(zn_cuda_check ${ZN_CUDA_CHECK_SOURCES})
  target_compile_options(zn_cuda_check PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${ZN_WARNINGS}>)
  target_link_libraries(zn_cuda_check PRIVATE zn_cuda_core)
  set(ZN_CPU_FAMILIES)
  if(ZN_CUDA_CHECK_CPU)
    target_link_libraries(zn_cuda_check PRIVATE zn_core)
    target_compile_definitions(zn_cuda_check PRIVATE ZN_CUDA_CHECK_CPU=1)
    foreach(family gemm attention rmsnorm rope swiglu embedding logprob dpo adamw)
      if("${ZN_CORE_SOURCES}" MATCHES "native/kernels/cpu/${family}\\.cpp")
        string(TOUPPER ${family} upper)
        target_compile_definitions(zn_cuda_check PRIVATE ZN_HAVE_CPU_${upper}=1)
        list(APPEND ZN_CPU_FAMILIES ${family})
      endif()
    endforeach()
  endif()
  message(STATUS "zephyr-native: device check compares with CPU kernels: ${ZN_CPU_FAMILIES}")
endif()

if(ZN_BUILD_ADDON AND ZN_CUDA_ADDON_SOURCES)
  zn_add_addon(zn_cuda SOURCES ${ZN_CUDA_ADDON_SOURCES} LIBRARIES zn_cuda_core zn_core
               OUTPUT_DIR ${CMAKE_BINARY_DIR}/cuda)
endif()
