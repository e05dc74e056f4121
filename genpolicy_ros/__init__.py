"""genpolicy_ros: run generative robot policies safely (CBF-QP filter + runtime monitor)."""
