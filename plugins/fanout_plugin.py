"""Registers Fanout with Airflow. The fanout package itself is imported, not walked (see .airflowignore)."""

from airflow.plugins_manager import AirflowPlugin


class FanoutPlugin(AirflowPlugin):
    name = "fanout"
