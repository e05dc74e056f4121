"""One place to import Qt from: ``python_qt_binding`` inside rqt, PyQt5 elsewhere.

rqt (Humble to Kilted) loads Python plugins through python_qt_binding, which wraps PyQt5, so
the fallback is PyQt5 too: the widget tested here is the widget rqt runs. pyqtgraph is imported
after Qt so it binds to the same Qt library.
"""

import os

try:
    from python_qt_binding import QtCore, QtGui, QtWidgets  # noqa: F401  (re-exported)
    BINDING = 'python_qt_binding'
except ImportError:
    from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: F401  (re-exported)
    BINDING = 'PyQt5'
    os.environ.setdefault('PYQTGRAPH_QT_LIB', 'PyQt5')

import pyqtgraph  # noqa: E402,F401  (after Qt on purpose)

__all__ = ['BINDING', 'QtCore', 'QtGui', 'QtWidgets', 'pyqtgraph']
