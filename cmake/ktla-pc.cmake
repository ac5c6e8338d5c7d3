# Run by `cmake --install`: writes ktla.pc for the prefix being installed into, which may differ
# from the one the build was configured with (`cmake --install build --prefix P`).
# In: KTLA_PC_IN, KTLA_PC_OUT, KTLA_PC_VERSION, KTLA_PC_LIBDIR, KTLA_PC_INCLUDEDIR (set by the
# install(CODE) just before), CMAKE_INSTALL_PREFIX (set by cmake --install).
set(prefix "${CMAKE_INSTALL_PREFIX}")
foreach(dir LIBDIR INCLUDEDIR)
    if(NOT IS_ABSOLUTE "${KTLA_PC_${dir}}")
        set(KTLA_PC_${dir} "\${prefix}/${KTLA_PC_${dir}}")
    endif()
endforeach()
configure_file("${KTLA_PC_IN}" "${KTLA_PC_OUT}" @ONLY)
