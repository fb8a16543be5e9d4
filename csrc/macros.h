// Argument checks that name the argument, in the style of pytorch_scatter's CHECK_* macros.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dcpe {

template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Thrown when the caller asked to stop (Ctrl-C); the binding turns it into the pending
// Python exception.
struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

}  // namespace dcpe

// DCPE_CHECK_ARG(cond, "name", value, "what is expected") -> std::invalid_argument (ValueError)
#define DCPE_CHECK_ARG(cond, name, value, expected)                                     \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      throw std::invalid_argument(::dcpe::str_cat("dcpe: argument '", name, "' = ",     \
                                                  value, " is invalid: ", expected));   \
    }                                                                                   \
  } while (0)

#define DCPE_CHECK(cond, ...)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      throw std::invalid_argument(::dcpe::str_cat("dcpe: ", __VA_ARGS__));     \
    }                                                                          \
  } while (0)
