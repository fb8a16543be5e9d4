// Run engine code with the GIL released and Ctrl-C polled (shared by the bindings).
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <functional>

#include "macros.h"

namespace dcpe {

// Calls f(interrupted) without the GIL; interrupted() takes the GIL briefly and reports a
// pending signal.  An engine that throws Interrupted surfaces here as the pending Python
// exception (KeyboardInterrupt).
template <typename F>
void call_released(F&& f) {
  const std::function<bool()> interrupted = []() {
    pybind11::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
  };
  bool stopped = false;
  {
    pybind11::gil_scoped_release release;
    try {
      f(interrupted);
    } catch (const Interrupted&) {
      stopped = true;
    }
  }
  if (stopped) throw pybind11::error_already_set();
}

}  // namespace dcpe
