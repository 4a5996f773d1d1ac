CREATE OR REPLACE PACKAGE inventory_pkg AS
  PROCEDURE sync_inventory;
  FUNCTION count_inventory RETURN NUMBER;
END inventory_pkg;
