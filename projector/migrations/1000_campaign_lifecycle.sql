-- Campaign states before the lifecycle said 'active' for what is now 'running'.
UPDATE campaigns SET state = 'running' WHERE state = 'active';
