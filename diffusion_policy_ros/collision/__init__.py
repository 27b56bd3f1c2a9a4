"""Collision checking and fallback planning for the guard between the policy and the arm (no rclpy).

robot_model  RobotModel.from_urdf(urdf, srdf): pinocchio kinematics + coal geometry, enabled pairs
scene        SceneObject, Scene: boxes/spheres/cylinders with poses, editable at run time
checker      CollisionChecker.check_state / check_path: joint limits, self and scene collisions
planner      FallbackPlanner: OMPL RRTConnect + shortcut + ruckig timing -> Plan | PlanningFailed
guard        CollisionGuard.review(measured, chunk) -> GuardDecision (pass/replace/hold/reject)
moveit_backend  the same interface over move_group's services; select_backend(auto|embedded|moveit)
config       CollisionGuardConfig: the params file's single source of truth

Modules are imported explicitly (pinocchio and OMPL load only where they are used).
"""
