#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "ktla.h"

static const int codes[] = {
#define CODE(name, value, msg) name,
    KTLA_ERRORS(CODE)
#undef CODE
};

Test(error, every_library_code_has_its_own_name_and_sentence)
{
    size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t i = 0; i < n; i++) {
        cr_assert(codes[i] < -4000, "code %d overlaps errno values", codes[i]);
        cr_assert_str_neq(ktla_strerror(codes[i]), ktla_strerror(-999999));
        cr_assert_str_neq(ktla_err_name(codes[i]), "UNKNOWN");
        for (size_t j = 0; j < i; j++) {
            cr_assert_neq(codes[i], codes[j]);
            cr_assert_str_neq(ktla_strerror(codes[i]), ktla_strerror(codes[j]));
        }
    }
}

Test(error, errno_values_are_explained_too)
{
    cr_assert_str_eq(ktla_err_name(-ENOMEM), "ENOMEM");
    cr_assert_str_eq(ktla_strerror(-ENOMEM), strerrordesc_np(ENOMEM));
    cr_assert_str_eq(ktla_strerror(0), "success");
    cr_assert_str_eq(ktla_err_name(-999999), "UNKNOWN");
    cr_assert_str_eq(ktla_strerror(12345), "unknown ktla error code");
}

Test(error, version_is_the_project_version)
{
    cr_assert_str_eq(ktla_version(), KTLA_TEST_VERSION);
}
