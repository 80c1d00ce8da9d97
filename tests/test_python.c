/*
 * test_python.c: the Python package (python/fusionbench_c) and the install. Both load the
 * shared library into /usr/bin/python3, so they are left out of the AddressSanitizer build
 * (an ASan library cannot be loaded into an interpreter that was not started with it); the
 * plain `make test` runs them.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__SANITIZE_ADDRESS__)

/* FusionBench's seed tutorial with only its imports changed, TIES, a FusionBench YAML, state
 * dicts, paths, errors and Ctrl-C, each against plain PyTorch: tests/python/tutorial.py. */
TEST(python_package_runs_fusionbenchs_tutorial_as_pytorch_computes_it)
{
    char script[4200], pypath[4200], lib[4200];
    snprintf(script, sizeof script, "%s/tests/python/tutorial.py", fb_test_src_dir);
    snprintf(pypath, sizeof pypath, "%s/python", fb_test_src_dir);
    snprintf(lib, sizeof lib, "%s/libfusionbench.so.0", fb_test_bin_dir);
    setenv("PYTHONPATH", pypath, 1);
    setenv("FUSIONBENCH_C_LIB", lib, 1);
    const char *argv[] = {"/usr/bin/python3", script, fb_test_src_dir, fb_test_tmp(), NULL};
    char *out = NULL, *err = NULL;
    int rc = fb_test_run(argv, &out, &err);
    unsetenv("PYTHONPATH");
    unsetenv("FUSIONBENCH_C_LIB");
    if (rc != 0 || !out || strncmp(out, "ok ", 3) != 0)
        fb_test_fail(__FILE__, __LINE__, "tutorial.py: rc %d\n%s%s", rc, out ? out : "",
                     err ? err : "");
    free(out);
    free(err);
}

/* fusionbench_c.mergekit: a configuration against PyTorch's merge, a dry run, an extracted
 * adapter and an error, from Python: tests/python/mergekit_check.py. */
TEST(python_package_runs_mergekit_configurations_and_extracts_lora)
{
    char script[4200], pypath[4200], lib[4200];
    snprintf(script, sizeof script, "%s/tests/python/mergekit_check.py", fb_test_src_dir);
    snprintf(pypath, sizeof pypath, "%s/python", fb_test_src_dir);
    snprintf(lib, sizeof lib, "%s/libfusionbench.so.0", fb_test_bin_dir);
    setenv("PYTHONPATH", pypath, 1);
    setenv("FUSIONBENCH_C_LIB", lib, 1);
    const char *argv[] = {"/usr/bin/python3", script, fb_test_src_dir, fb_test_ref_dir,
                          fb_test_tmp(), NULL};
    char *out = NULL, *err = NULL;
    int rc = fb_test_run(argv, &out, &err);
    unsetenv("PYTHONPATH");
    unsetenv("FUSIONBENCH_C_LIB");
    if (rc != 0 || !out || strncmp(out, "ok ", 3) != 0)
        fb_test_fail(__FILE__, __LINE__, "mergekit_check.py: rc %d\n%s%s", rc, out ? out : "",
                     err ? err : "");
    free(out);
    free(err);
}

TEST(make_install_gives_pkg_config_a_cli_with_its_configs_and_the_python_package)
{
    char script[4200];
    snprintf(script, sizeof script, "%s/tests/install_check.sh", fb_test_src_dir);
    const char *argv[] = {"/bin/bash", script, fb_test_src_dir, fb_test_bin_dir, fb_test_tmp(), NULL};
    char *out = NULL, *err = NULL;
    int rc = fb_test_run(argv, &out, &err);
    if (rc != 0 || !out || !strstr(out, "install ok"))
        fb_test_fail(__FILE__, __LINE__, "install_check.sh: rc %d\n%s%s", rc, out ? out : "",
                     err ? err : "");
    free(out);
    free(err);
}

#endif
