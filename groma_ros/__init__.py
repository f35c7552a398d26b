"""groma_ros: the Groma grounded multimodal LLM as a library and a ROS 2 node.

rosidl installs the generated message package under this same name (``groma_ros.msg``,
``groma_ros.action``). ``extend_path`` lets an editable checkout and that installed
directory act as one package, so both ``groma_ros.engine`` and ``groma_ros.msg`` import.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
